"""S3 lifecycle rules, as pure functions: a bucket's configuration parsed and checked as S3
checks it, written back as S3 answers it, and when a rule expires an object or an upload.

mkv applies `Expiration` (Days or Date) and `AbortIncompleteMultipartUpload`
(DaysAfterInitiation), filtered by key prefix, tags and object size. Without versions or
storage classes, `ExpiredObjectDeleteMarker` and `NoncurrentVersionExpiration` are kept and
answered but change nothing; a `Transition` is refused (InvalidStorageClass). A rule is a
JSON-able dict, as the S3 state keeps it (mkv/s3/state.py).

Days count as S3 counts them: an object expires at the first midnight (UTC) at least `Days`
days after it was written. `day` is a day's length in seconds (the `-s3_lifecycle_day` flag;
shorter only to see rules act in tests, as Ceph's rgw_lc_debug_interval).
"""

import math
import re
import secrets
from datetime import UTC, datetime
from xml.etree.ElementTree import Element

from mkv.http.headers import valid_value
from mkv.s3 import xml as s3xml
from mkv.s3.errors import S3Error
from mkv.s3.request import http_date, parse_http_date
from mkv.s3.xml import MalformedXML, Node

Rule = dict  # {"id", "enabled", "filter": {...} | None, "prefix": str | None (the old form),
#              "expiration": {"days" | "date" | "delete_marker"} | None,
#              "abort_days": int | None, "noncurrent_days": int | None}
DAY = 86400.0
MAX_RULES = 1000
MAX_ID = 255
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")


def _invalid(message: str) -> S3Error:
    return S3Error(400, "InvalidArgument", message)


def _positive(text: str | None, what: str) -> int:
    digits = (text or "").strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 9 or int(digits) == 0:
        raise _invalid(f"'{what}' must be a positive integer")
    return int(digits)


def _size(text: str | None, what: str) -> int:
    digits = (text or "").strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise _invalid(f"'{what}' must be a non-negative integer")
    return int(digits)


def parse_date(text: str) -> float:
    """An Expiration Date: ISO 8601's extended form, at midnight UTC (as S3 demands)."""
    if not _DATE.fullmatch(text.strip()):
        raise _invalid("'Date' must be in ISO 8601 format")
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _invalid("'Date' must be in ISO 8601 format") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp()
    if seconds % DAY:
        raise _invalid("'Date' must be at midnight GMT")
    return seconds


def _one(element: Element, name: str) -> Element | None:
    found = s3xml.children(element, name)
    if len(found) > 1:
        raise MalformedXML(f"more than one <{name}>")
    return found[0] if found else None


def _tag(element: Element) -> list[str]:
    key, value = s3xml.text_of(element, "Key"), s3xml.text_of(element, "Value")
    if key is None:
        raise MalformedXML("a Tag needs a Key")
    return [key, value or ""]


def _filter(element: Element) -> dict:
    """A rule's <Filter>: one condition, or several under <And>."""
    conditions = [c for c in element if isinstance(c.tag, str)]
    under_and = len(conditions) == 1 and conditions[0].tag.endswith("And")
    if not under_and and any(c.tag.endswith("And") for c in conditions):
        raise MalformedXML("an <And> is a Filter's only condition")
    # several conditions without <And> are taken as under one, as Ceph's RGW takes them
    parsed: dict = {"prefix": None, "tags": [], "greater": None, "less": None,
                    "and": under_and or len(conditions) > 1}
    scope = conditions[0] if under_and else element
    prefix = _one(scope, "Prefix")
    if prefix is not None:
        parsed["prefix"] = prefix.text or ""
    parsed["tags"] = [_tag(t) for t in s3xml.children(scope, "Tag")]
    if len({k for k, _ in parsed["tags"]}) != len(parsed["tags"]):
        raise _invalid("Duplicate Tag Keys are not allowed")
    for field, name in (("greater", "ObjectSizeGreaterThan"), ("less", "ObjectSizeLessThan")):
        found = _one(scope, name)
        if found is not None:
            parsed[field] = _size(found.text, name)
    if parsed["greater"] is not None and parsed["less"] is not None \
            and parsed["greater"] >= parsed["less"]:
        raise _invalid("ObjectSizeGreaterThan must be less than ObjectSizeLessThan")
    return parsed


def _expiration(element: Element) -> dict:
    days, date = s3xml.text_of(element, "Days"), s3xml.text_of(element, "Date")
    marker = s3xml.text_of(element, "ExpiredObjectDeleteMarker")
    given = [x is not None for x in (days, date, marker)]
    if sum(given) != 1:
        raise MalformedXML("an Expiration holds one of Days, Date, ExpiredObjectDeleteMarker")
    if days is not None:
        return {"days": _positive(days, "Days")}
    if date is not None:
        parse_date(date)
        return {"date": date.strip()}
    return {"delete_marker": (marker or "").strip().lower() == "true"}


def _rule(element: Element) -> Rule:
    rule_id = s3xml.text_of(element, "ID")
    if rule_id is not None and len(rule_id) > MAX_ID:
        raise _invalid(f"ID length should not exceed allowed limit of {MAX_ID}")
    status = (s3xml.text_of(element, "Status") or "").strip()
    if status not in ("Enabled", "Disabled"):
        raise MalformedXML("Status must be Enabled or Disabled")
    transitions = s3xml.children(element, "Transition") + \
        s3xml.children(element, "NoncurrentVersionTransition")
    for transition in transitions:  # checked as any rule is, then refused
        date, days = s3xml.text_of(transition, "Date"), s3xml.text_of(transition, "Days")
        if date is not None:
            parse_date(date)
        if days is not None:
            _size(days, "Days")
    if transitions:  # as S3 answers a class it does not have
        raise S3Error(400, "InvalidStorageClass", "The storage class you specified is not "
                      "valid: mkv keeps every object in one, STANDARD")
    filter_element, prefix = _one(element, "Filter"), s3xml.text_of(element, "Prefix")
    if (filter_element is None) == (prefix is None):
        raise MalformedXML("a Rule has a Filter or a Prefix, one of them")
    rule: Rule = {"id": rule_id or secrets.token_hex(16), "enabled": status == "Enabled",
                  "filter": _filter(filter_element) if filter_element is not None else None,
                  "prefix": prefix, "expiration": None, "abort_days": None,
                  "noncurrent_days": None}
    expiration = _one(element, "Expiration")
    if expiration is not None:
        rule["expiration"] = _expiration(expiration)
    abort = _one(element, "AbortIncompleteMultipartUpload")
    if abort is not None:
        rule["abort_days"] = _positive(s3xml.text_of(abort, "DaysAfterInitiation"),
                                       "DaysAfterInitiation")
        conditions = rule["filter"] or {}
        if conditions.get("tags") or conditions.get("greater") is not None \
                or conditions.get("less") is not None:
            raise S3Error(400, "InvalidRequest", "AbortIncompleteMultipartUpload cannot be "
                          "specified with a Tag or object size filter")
    noncurrent = _one(element, "NoncurrentVersionExpiration")
    if noncurrent is not None:
        rule["noncurrent_days"] = _positive(s3xml.text_of(noncurrent, "NoncurrentDays"),
                                            "NoncurrentDays")
    if rule["expiration"] is None and rule["abort_days"] is None \
            and rule["noncurrent_days"] is None:
        raise S3Error(400, "InvalidRequest", "At least one action needs to be specified in a "
                      "rule")
    return rule


def parse_configuration(body: bytes) -> list[Rule]:
    """PutBucketLifecycleConfiguration's body, checked as S3 checks it."""
    root = s3xml.parse(body, "LifecycleConfiguration")
    rules = [_rule(element) for element in s3xml.children(root, "Rule")]
    if not rules:
        raise MalformedXML("a LifecycleConfiguration holds at least one Rule")
    if len(rules) > MAX_RULES:
        raise _invalid(f"at most {MAX_RULES} rules")
    if len({rule["id"] for rule in rules}) != len(rules):
        raise _invalid("Rule ID must be unique. Found same ID for more than one rule")
    return rules


def _filter_nodes(conditions: dict) -> list[Node]:
    nodes: list[Node] = [("Prefix", conditions["prefix"])]
    nodes += [("Tag", [("Key", k), ("Value", v)]) for k, v in conditions["tags"]]
    nodes += [("ObjectSizeGreaterThan", _text(conditions["greater"])),
              ("ObjectSizeLessThan", _text(conditions["less"]))]
    return [("And", nodes)] if conditions["and"] else nodes


def _text(number: int | None) -> str | None:
    return None if number is None else str(number)


def configuration_document(rules: list[Rule]) -> bytes:
    """GetBucketLifecycleConfiguration's answer."""
    nodes: list[Node] = []
    for rule in rules:
        expiration = rule["expiration"] or {}
        children: list[Node] = [
            ("ID", rule["id"]),
            ("Filter", _filter_nodes(rule["filter"])) if rule["filter"] is not None
            else ("Prefix", rule["prefix"]),
            ("Status", "Enabled" if rule["enabled"] else "Disabled"),
            ("Expiration", [("Days", _text(expiration.get("days"))),
                            ("Date", expiration.get("date")),
                            ("ExpiredObjectDeleteMarker",
                             None if "delete_marker" not in expiration
                             else str(expiration["delete_marker"]).lower())])
            if expiration else ("Expiration", None),
            ("NoncurrentVersionExpiration", [("NoncurrentDays",
                                              _text(rule["noncurrent_days"]))])
            if rule["noncurrent_days"] is not None else ("NoncurrentVersionExpiration", None),
            ("AbortIncompleteMultipartUpload", [("DaysAfterInitiation",
                                                 _text(rule["abort_days"]))])
            if rule["abort_days"] is not None else ("AbortIncompleteMultipartUpload", None)]
        nodes.append(("Rule", children))
    return s3xml.document("LifecycleConfiguration", nodes)


# --- when rules act ---
def rule_prefix(rule: Rule) -> str:
    """The key prefix (within the bucket) a rule is limited to; "" for all."""
    if rule["filter"] is not None:
        return rule["filter"]["prefix"] or ""
    return rule["prefix"] or ""


def needs_tags(rule: Rule) -> bool:
    return bool(rule["filter"] and rule["filter"]["tags"])


def matches(rule: Rule, name: str, size: int | None, tags: list | None) -> bool:
    """Whether an object of the bucket (`name` within it, `size` bytes, `tags`) is the rule's.
    An unknown size or tags (None) meets a condition on them: the caller asks again once it
    knows them."""
    if not rule["enabled"] or not name.startswith(rule_prefix(rule)):
        return False
    conditions = rule["filter"]
    if conditions is None:
        return True
    if size is not None and (
            (conditions["greater"] is not None and size <= conditions["greater"])
            or (conditions["less"] is not None and size >= conditions["less"])):
        return False
    if tags is not None:
        have = {k: v for k, v in tags}
        if any(have.get(k) != v for k, v in conditions["tags"]):
            return False
    return True


def after_days(start: float, days: int, day: float = DAY) -> float:
    """The first day boundary at least `days` days after `start`: midnight UTC for real days."""
    return (math.ceil(start / day) + days) * day


def expires_at(rule: Rule, modified: float, day: float = DAY) -> float | None:
    """When the rule's Expiration removes an object written at `modified` (None: never)."""
    expiration = rule["expiration"] or {}
    if "days" in expiration:
        return after_days(modified, expiration["days"], day)
    if "date" in expiration:
        return parse_date(expiration["date"])
    return None


def expiry(rules: list[Rule], name: str, size: int | None, tags: list | None,
           modified: float, day: float = DAY) -> tuple[float, str] | None:
    """The earliest time one of `rules` expires the object, and that rule's ID."""
    found = [(when, rule["id"]) for rule in rules if matches(rule, name, size, tags)
             and (when := expires_at(rule, modified, day)) is not None]
    return min(found) if found else None


def abort_at(rules: list[Rule], name: str, initiated: float,
             day: float = DAY) -> float | None:
    """When the earliest AbortIncompleteMultipartUpload rule aborts an upload to `name`."""
    found = [after_days(initiated, rule["abort_days"], day) for rule in rules
             if rule["abort_days"] is not None and matches(rule, name, None, None)]
    return min(found) if found else None


def expiration_header(rules: list[Rule], name: str, size: int | None, tags: list,
                      modified: float, day: float = DAY) -> list[tuple[str, str]]:
    """The `x-amz-expiration` header S3 answers a write or read with when one of `rules` will
    expire the object; none when none will (or the rule's ID could not be sent)."""
    found = expiry(rules, name, size, tags, modified, day)
    if found is None:
        return []
    rule_id = found[1].replace("\\", "\\\\").replace('"', '\\"')
    value = f'expiry-date="{http_date(found[0])}", rule-id="{rule_id}"'
    return [("x-amz-expiration", value)] if valid_value(value) else []


def size_and_time(headers: list[tuple[str, str]]) -> tuple[int | None, float | None]:
    """An object's size and Last-Modified, from a GET's or HEAD's answer headers."""
    found = dict(headers)
    size = int(found["Content-Range"].rpartition("/")[2]) if "Content-Range" in found \
        else int(found.get("Content-Length", "0"))
    return size, parse_http_date(found.get("Last-Modified", "").encode())
