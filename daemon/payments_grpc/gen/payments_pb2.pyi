from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreatePaymentRequest(_message.Message):
    __slots__ = ("request_id", "amount", "currency", "description", "customer", "metadata", "capture_method", "kind", "interval", "method", "status_callback_url", "uisp_client_id", "wait_seconds")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_METHOD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STATUS_CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    UISP_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    amount: int
    currency: str
    description: str
    customer: str
    metadata: _containers.ScalarMap[str, str]
    capture_method: str
    kind: str
    interval: str
    method: str
    status_callback_url: str
    uisp_client_id: int
    wait_seconds: int
    def __init__(self, request_id: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., description: _Optional[str] = ..., customer: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., capture_method: _Optional[str] = ..., kind: _Optional[str] = ..., interval: _Optional[str] = ..., method: _Optional[str] = ..., status_callback_url: _Optional[str] = ..., uisp_client_id: _Optional[int] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
    __slots__ = ("status", "customer", "created_from", "created_to", "limit", "cursor", "parent")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FROM_FIELD_NUMBER: _ClassVar[int]
    CREATED_TO_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    status: str
    customer: str
    created_from: str
    created_to: str
    limit: int
    cursor: str
    parent: str
    def __init__(self, status: _Optional[str] = ..., customer: _Optional[str] = ..., created_from: _Optional[str] = ..., created_to: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., parent: _Optional[str] = ...) -> None: ...

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_cursor")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[Payment]
    next_cursor: str
    def __init__(self, payments: _Optional[_Iterable[_Union[Payment, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class CancelPaymentRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CapturePaymentRequest(_message.Message):
    __slots__ = ("id", "request_id", "amount")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    amount: int
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class RefundPaymentRequest(_message.Message):
    __slots__ = ("id", "request_id", "amount", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    amount: int
    reason: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., amount: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GetRefundRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("id", "status", "amount", "currency", "description", "customer", "metadata", "capture_method", "kind", "interval", "method", "amount_captured", "amount_refunded", "client_secret", "hosted_url", "status_callback_url", "uisp_client_id", "failure_reason", "created_at", "updated_at", "currency_exponent", "amount_display", "amount_refundable", "provider", "provider_ref", "failure_code", "failure_message", "cancel_requested", "capture_requested", "expires_at", "finished_at", "uisp_payment_id", "parent_payment_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_METHOD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CAPTURED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    HOSTED_URL_FIELD_NUMBER: _ClassVar[int]
    STATUS_CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    UISP_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DISPLAY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_REFUNDABLE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REF_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    UISP_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    amount: int
    currency: str
    description: str
    customer: str
    metadata: _containers.ScalarMap[str, str]
    capture_method: str
    kind: str
    interval: str
    method: str
    amount_captured: int
    amount_refunded: int
    client_secret: str
    hosted_url: str
    status_callback_url: str
    uisp_client_id: int
    failure_reason: str
    created_at: str
    updated_at: str
    currency_exponent: int
    amount_display: str
    amount_refundable: int
    provider: str
    provider_ref: str
    failure_code: str
    failure_message: str
    cancel_requested: bool
    capture_requested: bool
    expires_at: str
    finished_at: str
    uisp_payment_id: int
    parent_payment_id: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., description: _Optional[str] = ..., customer: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., capture_method: _Optional[str] = ..., kind: _Optional[str] = ..., interval: _Optional[str] = ..., method: _Optional[str] = ..., amount_captured: _Optional[int] = ..., amount_refunded: _Optional[int] = ..., client_secret: _Optional[str] = ..., hosted_url: _Optional[str] = ..., status_callback_url: _Optional[str] = ..., uisp_client_id: _Optional[int] = ..., failure_reason: _Optional[str] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ..., currency_exponent: _Optional[int] = ..., amount_display: _Optional[str] = ..., amount_refundable: _Optional[int] = ..., provider: _Optional[str] = ..., provider_ref: _Optional[str] = ..., failure_code: _Optional[str] = ..., failure_message: _Optional[str] = ..., cancel_requested: _Optional[bool] = ..., capture_requested: _Optional[bool] = ..., expires_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., uisp_payment_id: _Optional[int] = ..., parent_payment_id: _Optional[str] = ...) -> None: ...

class Refund(_message.Message):
    __slots__ = ("id", "payment_id", "status", "amount", "currency", "reason", "failure_reason", "created_at", "updated_at", "amount_display", "provider_ref", "finished_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DISPLAY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REF_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    payment_id: str
    status: str
    amount: int
    currency: str
    reason: str
    failure_reason: str
    created_at: str
    updated_at: str
    amount_display: str
    provider_ref: str
    finished_at: str
    def __init__(self, id: _Optional[str] = ..., payment_id: _Optional[str] = ..., status: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., reason: _Optional[str] = ..., failure_reason: _Optional[str] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ..., amount_display: _Optional[str] = ..., provider_ref: _Optional[str] = ..., finished_at: _Optional[str] = ...) -> None: ...
