"""Harness `s3rules`: the S3 rules a bucket's owner sends, lifecycle configurations
(`parse_configuration`) and ACLs (`parse_policy`, `acl_of_headers`), and the answers written
from them read back.

The last byte picks a mode:
- a LifecycleConfiguration body: parsed; what parses is written with
  `configuration_document` and must parse back to the same rules;
- an AccessControlPolicy body: parsed for an owner; the grants written with
  `policy_document` must parse back to the same grants;
- grant headers: the input's lines as `x-amz-acl` and `x-amz-grant-*` values.
A crash is an exception other than MalformedXML and S3Error, or a broken invariant: a rule's
fields have their types, days are positive, grants name a known grantee and permission.
"""

import atheris

from fuzz.common import check, run, tail

with atheris.instrument_imports(include=["mkv"]):
    from mkv.s3.errors import S3Error
    from mkv.s3.grants import PERMISSIONS, acl_of_headers, parse_policy, policy_document
    from mkv.s3.lifecycle import configuration_document, parse_configuration
    from mkv.s3.xml import MalformedXML

MAX_LEN = 8192
LIFECYCLE, POLICY, HEADERS = range(3)
OWNER, KNOWN = "OWNERKEY", {"OWNERKEY", "OTHER"}
HEADER_NAMES = [b"x-amz-acl", b"x-amz-grant-read", b"x-amz-grant-write",
                b"x-amz-grant-read-acp", b"x-amz-grant-write-acp", b"x-amz-grant-full-control"]


def check_rules(rules: list[dict]) -> None:
    for rule in rules:
        check(isinstance(rule["id"], str) and 0 < len(rule["id"]) <= 255, f"id {rule!r:.200}")
        days = [(rule["expiration"] or {}).get("days"), rule["abort_days"],
                rule["noncurrent_days"]]
        check(all(d is None or (isinstance(d, int) and d > 0) for d in days), f"{rule!r:.200}")


def check_grants(grants: list[list[str]]) -> None:
    for grantee, permission in grants:
        check(permission in PERMISSIONS, f"permission {permission!r}")
        check(grantee in ("group:AllUsers", "group:AuthenticatedUsers", "owner")
              or grantee.removeprefix("id:") in KNOWN, f"grantee {grantee!r}")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, HEADERS)
    rest = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if mode == LIFECYCLE:
            rules = parse_configuration(rest)
            check_rules(rules)
            again = parse_configuration(configuration_document(rules))
            check(again == rules, f"wrote {rules!r:.300}, read {again!r:.300}")
        elif mode == POLICY:
            grants = parse_policy(rest, OWNER, KNOWN)
            check_grants(grants)
            again = parse_policy(policy_document(OWNER, grants), OWNER, KNOWN)
            check(again == grants, f"wrote {grants!r:.300}, read {again!r:.300}")
        else:
            lines = rest.split(b"\n")
            headers = {name: value for name, value in zip(HEADER_NAMES, lines, strict=False)
                       if value}
            grants = acl_of_headers(headers, KNOWN)
            check(grants is None or isinstance(grants, list), f"{grants!r:.200}")
            check_grants(grants or [])
    except (MalformedXML, S3Error):
        pass


SEEDS = [
    b"<LifecycleConfiguration><Rule><ID>logs</ID><Filter><Prefix>logs/</Prefix></Filter>"
    b"<Status>Enabled</Status><Expiration><Days>30</Days></Expiration></Rule><Rule><ID>tmp"
    b"</ID><Filter><And><Prefix>t/</Prefix><Tag><Key>a</Key><Value>b</Value></Tag>"
    b"<ObjectSizeGreaterThan>1</ObjectSizeGreaterThan><ObjectSizeLessThan>9"
    b"</ObjectSizeLessThan></And></Filter><Status>Disabled</Status><Expiration><Date>"
    b"2030-01-01T00:00:00Z</Date></Expiration><AbortIncompleteMultipartUpload>"
    b"<DaysAfterInitiation>2</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule>"
    b"</LifecycleConfiguration>" + tail(LIFECYCLE),
    b"<LifecycleConfiguration><Rule><Prefix></Prefix><Status>Enabled</Status>"
    b"<NoncurrentVersionExpiration><NoncurrentDays>1</NoncurrentDays>"
    b"</NoncurrentVersionExpiration><Expiration><ExpiredObjectDeleteMarker>true"
    b"</ExpiredObjectDeleteMarker></Expiration></Rule></LifecycleConfiguration>"
    + tail(LIFECYCLE),
    b'<AccessControlPolicy><Owner><ID>OWNERKEY</ID></Owner><AccessControlList><Grant>'
    b'<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group"><URI>'
    b"http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ"
    b"</Permission></Grant><Grant><Grantee><ID>OTHER</ID></Grantee><Permission>WRITE_ACP"
    b"</Permission></Grant></AccessControlList></AccessControlPolicy>" + tail(POLICY),
    b"public-read\nid=\"OTHER\", uri=\"http://acs.amazonaws.com/groups/global/AllUsers\""
    + tail(HEADERS),
    b"\nid=OTHER,id=\"OWNERKEY\"\n\n\nemailAddress=\"a@b\"" + tail(HEADERS),
    # a crash found and fixed, kept: a grant to mkv's own owner name, which is no access key
    b"\nid=mkv/",
]

if __name__ == "__main__":
    run(TestOneInput, SEEDS, MAX_LEN)
