"""The P-CSCF's own reg-event subscription as a dialog: TS 24.229 §5.2.3 (subscribe
after the registration, refresh before the grant runs out), RFC 6665 §4.1 (the
subscriber's side: the 2xx or the first NOTIFY sets up the dialog, `Expires` in the 2xx
and `expires` in Subscription-State give its end, a refresh is a SUBSCRIBE in the
dialog, `Expires: 0` ends it), RFC 3261 §12.1.2 / §12.2.1.1 (route set, remote target,
CSeq of a UAC's dialog).

Sans-I/O: what is kept, what a 2xx or NOTIFY changes in it, when it is refreshed, and
the in-dialog SUBSCRIBE. Sending it, and deciding whether to, is `PcscfCore`'s.
"""

from __future__ import annotations

import re

from imsaka.cscf.registrar import plain_contact, plain_tagged
from imsaka.sip import Request, Response, SipParseError

# The refresh point of TS 24.229 §5.2.3, as §5.1.1.3 gives it for the UE: 600 s before
# the end of a grant longer than 1200 s, else at half of it.
REFRESH_BEFORE = 600.0
LONG_GRANT = 1200.0
# The Expires our SUBSCRIBEs ask (TS 24.229 §5.2.3 gives 600 000 s).
ASKED = 600000

# Subscription-State's `expires` parameter (RFC 6665 §8.2.3), in the lower-cased text.
_EXPIRES_PARAM = re.compile(r";\s*expires\s*=\s*([0-9]{1,10})\s*(?:;|$)").search


def refresh_after(granted: float) -> float:
    """Seconds from a grant of `granted` s to its refresh."""
    return granted - REFRESH_BEFORE if granted > LONG_GRANT else granted / 2.0


class RegEventSubscription:
    """One reg-event subscription of the P-CSCF, for the registration of `impi`
    ("" once that registration ended or a fresh one replaced it: its NOTIFYs are then
    answered and end nothing). `remote_tag` is "" until the S-CSCF's 2xx or first
    NOTIFY named its side of the dialog; `ending` once we sent the SUBSCRIBE that ends
    it; `expires_at`/`refresh_at` are 0.0 until a grant is known. `since`: when it was
    made (a subscription the S-CSCF ends at once is not made again at once).
    `ended_active`: a NOTIFY reported the registration ended while the subscription
    stays active (Kamailio's S-CSCF ends registrations so): no terminated NOTIFY will
    end it, so it is ended from here as soon as the registration is gone."""

    __slots__ = (
        "call_id",
        "cseq",
        "ended_active",
        "ending",
        "expires_at",
        "impi",
        "impu",
        "local_tag",
        "refresh_at",
        "remote_tag",
        "remote_target",
        "route_set",
        "since",
    )

    def __init__(self, call_id: str, impi: str, impu: str, local_tag: str, now: float) -> None:
        self.call_id = call_id
        self.impi = impi
        self.impu = impu
        self.local_tag = local_tag
        self.remote_tag = ""
        self.remote_target = ""
        self.route_set: tuple[str, ...] = ()
        self.cseq = 1
        self.ending = False  # our Expires: 0 is out
        self.ended_active = False
        self.expires_at = 0.0
        self.refresh_at = 0.0
        self.since = now

    @property
    def confirmed(self) -> bool:
        """Whether the S-CSCF's side of the dialog is known (an in-dialog SUBSCRIBE can
        be sent)."""
        return bool(self.remote_tag and self.remote_target)

    def granted(self, seconds: int, now: float) -> None:
        """The S-CSCF granted `seconds` from `now` (a 2xx's Expires, a NOTIFY's
        Subscription-State `expires`): the refresh moves with it. 0 leaves no refresh."""
        self.expires_at = now + seconds
        self.refresh_at = now + refresh_after(seconds) if seconds > 0 else 0.0

    def __repr__(self) -> str:  # no secrets in it: identities, tags, times
        return (
            f"RegEventSubscription(call_id={self.call_id!r}, impi={self.impi!r}, "
            f"remote_tag={self.remote_tag!r}, cseq={self.cseq}, "
            f"expires_at={self.expires_at!r}, refresh_at={self.refresh_at!r})"
        )


def _shared(text: str, table: dict[str, str]) -> str:
    """`text` as the one string object `table` keeps for it (a few S-CSCF contacts shared
    by all their subscriptions), bounded."""
    kept = table.get(text)
    if kept is None:
        if len(table) >= 64:
            table.clear()
        table[text] = kept = text
    return kept


def on_2xx(
    sub: RegEventSubscription, response: Response, now: float, names: dict[str, str]
) -> None:
    """A 2xx to our SUBSCRIBE (RFC 6665 §4.1.2.1): the dialog from it if no NOTIFY set
    it up first (the remote tag from To, the route set from Record-Route reversed, RFC
    3261 §12.1.2), the remote target from its Contact (a refresh's 2xx updates it,
    §12.2.1.2), the grant from Expires (what we asked, if it has none). Raises
    SipParseError for headers it cannot read."""
    if not sub.remote_tag:
        tagged = plain_tagged(response.get("To"))  # as the S-CSCF writes it: no view
        sub.remote_tag = tagged[1] if tagged is not None else response.to.tag or ""
        sub.route_set = tuple(reversed(response.get_all("Record-Route")))
    plain = plain_contact(response)
    if plain is not None:
        sub.remote_target = _shared(plain.group(1), names)
    else:
        contacts = response.contacts
        if contacts and not contacts[0].star:
            sub.remote_target = _shared(contacts[0].uri, names)
    expires = response.expires
    if expires is None:
        expires = 0 if sub.ending else ASKED  # what we asked
    sub.granted(expires, now)


def on_notify(
    sub: RegEventSubscription, request: Request, state_text: str, now: float, names: dict[str, str]
) -> None:
    """A NOTIFY in the subscription (RFC 6665 §4.1.3): it sets up the dialog when it
    overtook the 2xx (remote tag from From, route set from Record-Route as it came,
    RFC 6665 §4.1.2.4), updates the remote target from its Contact, and an `active` or
    `pending` state's `expires` is the grant from now (§4.1.3)."""
    try:
        if not sub.remote_tag:
            sub.remote_tag = request.from_.tag or ""
            sub.route_set = tuple(request.get_all("Record-Route"))
        raw = request.get("Contact")
        # (parsed only when it names another target than the one kept: most NOTIFYs
        # repeat it)
        if raw and (not sub.remote_target or sub.remote_target not in raw):
            contacts = request.contacts
            if contacts and not contacts[0].star:
                sub.remote_target = _shared(contacts[0].uri, names)
    except SipParseError:
        return  # the dialog stays as it was; the NOTIFY is still answered
    if state_text.startswith(("active", "pending")):
        m = _EXPIRES_PARAM(state_text)
        if m is not None:
            sub.granted(int(m.group(1)), now)


def in_dialog_subscribe(
    sub: RegEventSubscription, via: str, own_uri: str, contact: str, expires: int
) -> Request:
    """The SUBSCRIBE that refreshes (`expires` > 0) or ends (`expires` 0) `sub` (RFC 6665
    §4.1.2.2, §4.1.2.3): to its remote target along its route set, the next CSeq."""
    sub.cseq += 1
    return Request(
        "SUBSCRIBE",
        sub.remote_target,
        [
            ("Via", via),
            ("Max-Forwards", "70"),
            *[("Route", r) for r in sub.route_set],
            ("From", f"{own_uri};tag={sub.local_tag}"),
            ("To", f"<{sub.impu}>;tag={sub.remote_tag}"),
            ("Call-ID", sub.call_id),
            ("CSeq", f"{sub.cseq} SUBSCRIBE"),
            ("Event", "reg"),
            ("Expires", str(expires)),
            ("Contact", contact),
            ("P-Asserted-Identity", own_uri),
            ("Content-Length", "0"),
        ],
    )
