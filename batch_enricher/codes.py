"""The API's error codes, their documented reasons, and what batch-enricher does with each.

The table is the reference's ("错误码参照"), verbatim. What to do with a code is data too:
`KIND[code]` says whether it is an answer, a rejection, worth a retry, or fatal to the run.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Kind(StrEnum):
    """What a reply's error_code means for the row and the run."""

    OK = "ok"  # billed answer with scores
    REJECTED = "rejected"  # final for this person, not billed, never retried
    TRANSIENT = "transient"  # retry with backoff
    RATE_LIMITED = "rate_limited"  # transient, and slow the shared rate down
    QUOTA = "quota"  # transient; persisting, it opens the quota breaker
    ACCOUNT = "account"  # abort the whole run at once


#: Every documented code with the reference's reason text.
REASONS: Final[dict[int, str]] = {
    0: "成功",
    # 服务级错误码
    281501: "身份证号格式错误",
    281502: "姓名格式错误",
    281503: "手机号格式错误",
    281504: "网络异常",
    281505: "查询失败",
    # 系统级错误码
    10001: "错误的请求KEY",
    10002: "该KEY无请求权限",
    10003: "KEY过期",
    10004: "错误的OPENID",
    10005: "应用未审核超时，请提交认证",
    10007: "未知的请求源",
    10008: "被禁止的IP",
    10009: "被禁止的KEY",
    10011: "当前IP请求超过限制",
    10012: "请求超过次数限制",
    10013: "测试KEY超过请求限制",
    10014: "系统内部异常(调用充值类业务时，请务必联系客服或通过订单查询接口检测订单，避免造成损失)",
    10020: "接口维护",
    10021: "接口停用",
}

#: The reference's legacy `resultcode` for each system-level code (shown by `codes`).
LEGACY_RESULTCODES: Final[dict[int, int]] = {
    code: code - 10000 + 100 for code in REASONS if 10000 < code < 11000
}

KIND: Final[dict[int, Kind]] = {
    0: Kind.OK,
    281501: Kind.REJECTED,
    281502: Kind.REJECTED,
    281503: Kind.REJECTED,
    281504: Kind.TRANSIENT,
    281505: Kind.REJECTED,
    10001: Kind.ACCOUNT,
    10002: Kind.ACCOUNT,
    10003: Kind.ACCOUNT,
    10004: Kind.ACCOUNT,
    10005: Kind.ACCOUNT,
    10007: Kind.ACCOUNT,
    10008: Kind.ACCOUNT,
    10009: Kind.ACCOUNT,
    10011: Kind.RATE_LIMITED,
    10012: Kind.QUOTA,
    10013: Kind.ACCOUNT,
    10014: Kind.TRANSIENT,
    10020: Kind.ACCOUNT,
    10021: Kind.ACCOUNT,
}

#: Local validation failures use the API's own codes so both read alike in the output.
INVALID_IDCARD: Final = 281501
INVALID_NAME: Final = 281502
INVALID_MOBILE: Final = 281503


def kind_of(code: int) -> Kind:
    """Classify an error_code; an undocumented one is treated as transient (retry, never bill).

    >>> kind_of(281505)
    <Kind.REJECTED: 'rejected'>
    """
    return KIND.get(code, Kind.TRANSIENT)


def reason_of(code: int) -> str:
    """The documented reason for a code, or a neutral text for an undocumented one.

    >>> reason_of(10001)
    '错误的请求KEY'
    """
    return REASONS.get(code, f"未知错误码 {code}")
