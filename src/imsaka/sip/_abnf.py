"""SIP grammar in one place (RFC 3261 §25, RFC 3329 Annex A, RFC 7315, RFC 3966).

Every rule is compiled once and only ever matched against one header value or one
line, never against a whole buffer. Names and tables here are shared by the message,
header, URI and transaction modules.
"""

from __future__ import annotations

import re

# token       =  1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(TOKEN)

# Method            =  INVITEm / ACKm / ... / extension-method ; extension-method = token
METHOD_RE = TOKEN_RE

# Status-Code = 3DIGIT ; Reason-Phrase = *(reserved / unreserved / escaped / UTF8-NONASCII
#               / UTF8-CONT / SP / HTAB)  -- we only refuse control characters.
STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT
VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)

# Request-URI = SIP-URI / SIPS-URI / absoluteURI   (scheme ":" ...; no whitespace)
REQUEST_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\s\x00-\x1f\x7f]+")

# RFC 3261 §8.1.1.7: the branch of a compliant element starts with this cookie.
MAGIC_COOKIE = "z9hG4bK"

# §7.3.3 compact forms, plus RFC 3841 (a, j, d), RFC 3515 (r), RFC 3892 (b),
# RFC 4028 (x), RFC 3903/6665 (o, u), RFC 4474 (y, n).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "o": "event",
    "u": "allow-events",
    "y": "identity",
    "n": "identity-info",
}

# How we write a header name we add ourselves (a received name is kept as written).
CANONICAL_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "p-access-network-info": "P-Access-Network-Info",
    "p-visited-network-id": "P-Visited-Network-ID",
    "p-charging-vector": "P-Charging-Vector",
    "p-charging-function-addresses": "P-Charging-Function-Addresses",
    "p-associated-uri": "P-Associated-URI",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1: only those whose
# grammar is `#(...)` may be combined on one line). Others (Date, the digest
# headers, unknown headers) are never split at commas.
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "require",
        "proxy-require",
        "supported",
        "unsupported",
        "allow",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "content-language",
        "allow-events",
        "alert-info",
        "call-info",
        "error-info",
        "in-reply-to",
        "warning",
        "security-client",
        "security-server",
        "security-verify",
        "p-associated-uri",
        "p-asserted-identity",
        "p-preferred-identity",
        "p-visited-network-id",
        "p-charging-function-addresses",
        "reason",
        "accept-contact",
        "reject-contact",
        "request-disposition",
        "history-info",
    }
)

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def canonical_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded."""
    key = name.strip().lower()
    return COMPACT_FORMS.get(key, key)


def display_name(key: str, given: str) -> str:
    """The name we write for a header we add: the caller's spelling when it has
    capitals, else (a compact form or all lower case) the long canonical form."""
    if len(given) == 1 or given.islower():
        return long_name(key)
    return given


def long_name(key: str) -> str:
    return CANONICAL_NAMES.get(key) or "-".join(p.capitalize() for p in key.split("-"))


def split_commas(value: str) -> list[str]:
    """Split a header value at top-level commas: not inside quotes or <...>."""
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    if '"' not in value and "<" not in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    out: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out
