"""The S3 rules an owner sends, as pure functions under generated input (hypothesis): lifecycle
configurations and ACLs written as S3 answers them parse back to what was written; hostile
bodies and grant headers are refused with S3's errors and nothing else; an object's expiry
never comes before its rule's days are over. (fuzz/s3rules.py feeds the same parsers
coverage-guided.)"""

import math
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkv.s3.errors import S3Error
from mkv.s3.expiry import walked
from mkv.s3.grants import (
    ALL_USERS,
    AUTHENTICATED,
    PERMISSIONS,
    acl_of_headers,
    allows,
    canned_acl,
    in_order,
    parse_policy,
    policy_document,
)
from mkv.s3.lifecycle import (
    abort_at,
    after_days,
    configuration_document,
    expiry,
    matches,
    parse_configuration,
)
from mkv.s3.xml import MalformedXML

KEYS = ["OWNER", "OTHER", "THIRD"]
# text XML 1.0 holds, without the CR it would normalise (the writer escapes it as &#13;)
XML_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00",
                                 max_codepoint=0x2FFFF).filter(
    lambda c: c in "\t\n\r" or c >= " " and c not in "\ufffe\uffff"), max_size=40)
TAGS = st.lists(st.tuples(XML_TEXT.filter(bool), XML_TEXT).map(list), max_size=3,
                unique_by=lambda tag: tag[0])


@st.composite
def rules(draw) -> dict:
    conditions = {"prefix": draw(st.none() | XML_TEXT), "tags": draw(TAGS),
                  "greater": draw(st.none() | st.integers(0, 10**6)), "less": None,
                  "and": False}
    if conditions["greater"] is not None and draw(st.booleans()):
        conditions["less"] = conditions["greater"] + draw(st.integers(1, 10**6))
    given_conditions = sum(x is not None for x in (conditions["prefix"], conditions["greater"],
                                                   conditions["less"])) + len(conditions["tags"])
    conditions["and"] = given_conditions > 1 or draw(st.booleans()) and given_conditions > 0
    old_form = draw(st.booleans()) and given_conditions == 0
    action = draw(st.sampled_from(["days", "date", "abort", "both"]))
    abortable = not conditions["tags"] and conditions["greater"] is None
    if action in ("abort", "both") and not abortable:
        action = "days"
    expiration = None
    if action in ("days", "both"):
        expiration = {"days": draw(st.integers(1, 10**5))}
    elif action == "date":
        expiration = {"date": f"20{draw(st.integers(10, 99))}-0{draw(st.integers(1, 9))}-1"
                              f"{draw(st.integers(0, 9))}T00:00:00Z"}
    return {"id": draw(XML_TEXT.filter(lambda t: t.strip() and len(t) <= 255)),
            "enabled": draw(st.booleans()),
            "filter": None if old_form else conditions,
            "prefix": (draw(XML_TEXT) if old_form else None),
            "expiration": expiration,
            "abort_days": draw(st.integers(1, 1000)) if action in ("abort", "both") else None,
            "noncurrent_days": None}


@settings(max_examples=300, deadline=None)
@given(st.lists(rules(), min_size=1, max_size=5, unique_by=lambda r: r["id"]))
def test_a_configuration_written_parses_back(written):
    assert parse_configuration(configuration_document(written)) == written


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_body_is_a_configuration_or_refused_as_s3_refuses(body):
    try:
        parse_configuration(body)
    except (MalformedXML, S3Error):
        pass


@settings(max_examples=300, deadline=None)
@given(rules(), XML_TEXT, st.integers(0, 10**9), st.floats(0, 4e9), st.floats(1, 86400))
def test_expiry_never_comes_before_the_days_are_over(rule, name, size, written, day):
    found = expiry([rule], name, size, [], written, day)
    days = (rule["expiration"] or {}).get("days")
    if found is None or days is None:
        return
    slack = 1e-9 * (written + (days + 1) * day)  # float rounding, nothing more
    assert written + days * day - slack <= found[0] <= written + (days + 1) * day + slack
    assert math.isclose(found[0] / day, round(found[0] / day))
    assert matches(rule, name, size, [])


def test_abort_rules_ignore_size_and_tags_but_not_prefix():
    rules = parse_configuration(b"<LifecycleConfiguration><Rule><ID>a</ID><Filter><Prefix>big/"
                                b"</Prefix></Filter><Status>Enabled</Status>"
                                b"<AbortIncompleteMultipartUpload><DaysAfterInitiation>2"
                                b"</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule>"
                                b"</LifecycleConfiguration>")
    assert abort_at(rules, "big/x", 0.0) == after_days(0.0, 2) == 2 * 86400
    assert abort_at(rules, "small/x", 0.0) is None
    assert expiry(rules, "big/x", 1, [], 0.0) is None


GRANTS = st.lists(st.tuples(st.sampled_from([ALL_USERS, AUTHENTICATED, "id:OTHER", "id:THIRD",
                                             "id:OWNER"]),
                            st.sampled_from(PERMISSIONS)).map(list), max_size=6)


@settings(max_examples=300, deadline=None)
@given(GRANTS)
def test_a_policy_written_parses_back_the_owners_grants_as_the_owners(grants):
    expected = in_order([["owner" if g == "id:OWNER" else g, p] for g, p in grants])
    assert parse_policy(policy_document("OWNER", grants), "OWNER", set(KEYS)) == expected


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([b"x-amz-acl", b"x-amz-grant-read", b"x-amz-grant-write",
                                        b"x-amz-grant-full-control", b"x-amz-grant-read-acp"]),
                       st.binary(max_size=80), max_size=3))
def test_hostile_grant_headers_are_refused_with_s3s_errors_only(headers):
    try:
        grants = acl_of_headers(headers, set(KEYS))
    except S3Error as e:
        assert e.status == 400
        return
    for grantee, permission in grants or []:
        assert permission in PERMISSIONS
        assert grantee in (ALL_USERS, AUTHENTICATED, "owner") or grantee[3:] in KEYS


@pytest.mark.parametrize("canned, anonymous, other", [
    ("private", set(), set()),
    ("public-read", {"READ"}, {"READ"}),
    ("public-read-write", {"READ", "WRITE"}, {"READ", "WRITE"}),
    ("authenticated-read", set(), {"READ"}),
])
def test_canned_acls_grant_what_s3_says(canned, anonymous, other):
    grants = canned_acl(canned)
    assert {p for p in PERMISSIONS if allows(grants, None, p)} == anonymous
    assert {p for p in PERMISSIONS if allows(grants, "OTHER", p)} == other


def test_full_control_gives_every_permission_to_its_grantee_alone():
    grants = [["id:OTHER", "FULL_CONTROL"]]
    assert all(allows(grants, "OTHER", p) for p in PERMISSIONS)
    assert not any(allows(grants, "THIRD", p) or allows(grants, None, p) for p in PERMISSIONS)


@pytest.mark.parametrize("count, replicas", [(1, 1), (3, 3), (3, 1), (5, 3), (6, 2), (2, 5)])
def test_a_pass_walks_a_copy_of_every_key(count, replicas):
    volumes = tuple(f"v{i}" for i in range(count))
    for start in range(count):
        chosen = set(walked(volumes, replicas, start))
        assert len(chosen) == count - min(replicas, count) + 1
        for copies in combinations(volumes, min(replicas, count)):  # wherever its copies are
            assert chosen & set(copies)


def test_conditions_without_and_are_taken_as_under_one_and_transitions_are_checked():
    loose = parse_configuration(b"<LifecycleConfiguration><Rule><ID>r</ID><Filter><Prefix>p/"
                                b"</Prefix><Tag><Key>k</Key><Value>v</Value></Tag></Filter>"
                                b"<Status>Enabled</Status><Expiration><Days>1</Days>"
                                b"</Expiration></Rule></LifecycleConfiguration>")
    assert loose[0]["filter"] == {"prefix": "p/", "tags": [["k", "v"]], "greater": None,
                                  "less": None, "and": True}
    assert not matches(loose[0], "p/x", 1, [["k", "w"]]) and matches(loose[0], "p/x", 1,
                                                                      [["k", "v"]])
    for transition, code in ((b"<Date>20220927</Date>", "InvalidArgument"),
                             (b"<Date>2022-09-27T00:00:00Z</Date>", "InvalidStorageClass")):
        with pytest.raises(S3Error) as refused:
            parse_configuration(b"<LifecycleConfiguration><Rule><ID>r</ID><Prefix/><Status>"
                                b"Enabled</Status><Transition>" + transition + b"<StorageClass>"
                                b"GLACIER</StorageClass></Transition></Rule>"
                                b"</LifecycleConfiguration>")
        assert (refused.value.status, refused.value.code) == (400, code)
