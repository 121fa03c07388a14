-- Whether a reconnection task's activation may send the reconnection SMS
-- (daemon/network/reconnect.py). A webhook's, a payment's or an operator's task does
-- (the one-SMS rule then decides); a drift fix that only corrects the network (an ONU
-- switched off by hand on the OLT) does not: that customer paid nothing just now.
ALTER TABLE reconnect_tasks ADD COLUMN notify boolean NOT NULL DEFAULT true;
