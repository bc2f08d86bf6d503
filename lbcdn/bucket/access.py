"""Who may do what to a bucket (pure): users from the config, grants per bucket, public reads.

Rules:
- A signed request names a user by access key id; an unsigned one is anonymous (None).
- Admin users may do everything. A bucket's owner (set in the config, or the user that created
  it through the API) may do everything to it. Other users get what the bucket's `read`,
  `write` and `list` grants say (`*` = any signed-in user).
- Anonymous requests may read where the bucket is public-read (or the key starts with a public
  prefix) and list where it is public-list; nothing else.
- `manage` (create/delete bucket, website configuration, policy, ACLs, Block Public Access) is
  owner/admin only.
- What was stored through the API (bucket policy, ACLs, Block Public Access; decided in
  publicaccess.public_decision) comes in as `shared`: its "deny" beats every grant (an explicit
  Deny in a policy, as in IAM), its "allow" grants anyone, signed or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from lbcdn.bucket.bucketpolicy import Decision
from lbcdn.bucket.config import ANY_USER, BucketConfig, BucketsConfig

Action = Literal["read", "write", "list", "manage"]


@dataclass(frozen=True)
class User:
    name: str
    access_key_id: str
    secret: str
    admin: bool


class AccessPolicy:
    """Decisions over a BucketsConfig; bucket owners recorded on disk are passed in."""

    def __init__(self, config: BucketsConfig) -> None:
        self.config = config
        self.users_by_key: dict[str, User] = {
            u.access_key_id: User(name, u.access_key_id, u.secret_access_key, u.admin)
            for name, u in config.users.items()}
        self.buckets: Mapping[str, BucketConfig] = config.buckets

    def secret_for(self, access_key_id: str) -> str | None:
        """The sigv4 Credentials protocol."""
        user = self.users_by_key.get(access_key_id)
        return user.secret if user is not None else None

    def user(self, access_key_id: str | None) -> User | None:
        return None if access_key_id is None else self.users_by_key.get(access_key_id)

    def owner_of(self, bucket: str, stored_owner: str | None) -> str | None:
        bc = self.buckets.get(bucket)
        if bc is not None and bc.owner is not None:
            return bc.owner
        return stored_owner

    def allowed(self, user: User | None, action: Action, bucket: str, key: str | None = None,
                stored_owner: str | None = None, shared: Decision = None) -> bool:
        if shared is not None:
            return shared == "allow"
        bc = self.buckets.get(bucket)
        if user is None:
            if bc is None:
                return False
            if action == "read":
                return bc.public_read or (key is not None and any(
                    key.startswith(p) for p in bc.public_read_prefixes))
            return action == "list" and bc.public_list
        if user.admin or self.owner_of(bucket, stored_owner) == user.name:
            return True
        if bc is None or action == "manage":
            return False
        granted = {"read": bc.read, "write": bc.write, "list": bc.list}[action]
        return user.name in granted or ANY_USER in granted

    def may_create_buckets(self, user: User | None) -> bool:
        # Any signed-in user may create a bucket (and then owns it), as in an AWS account.
        return user is not None

    def visible(self, user: User | None, bucket: str, stored_owner: str | None) -> bool:
        """Whether ListBuckets shows the bucket to this user."""
        return user is not None and any(
            self.allowed(user, a, bucket, None, stored_owner)
            for a in ("read", "write", "list", "manage"))
