"""Versioned serialization: change a data format in two phases and keep rollback safe.

Every payload carries a version tag (``@v2:`` then the codec's bytes). A release reads a set
of versions and writes one; the application works with the newest version's model and
records are upgraded on read and downgraded on write. See ``docs/serde.md`` for the
two-phase rollout playbook.

```python
from resilient.serde import Version, VersionedSerializer

users = VersionedSerializer(
    versions=[
        Version(1),
        # v2 adds "email"; v1 keeps it as an extra field when set, so nothing is lost.
        Version(2,
                upgrade=lambda d: {**d, "email": d.get("email")},
                downgrade=lambda d: {k: v for k, v in d.items() if v is not None or k != "email"}),
    ],
    write=1,            # phase one: read {1, 2}, write 1
    name="user",
)
payload = users.dumps({"id": 7, "name": "Ada", "email": None})   # b'@v1:{"id":7,"name":"Ada"}'
user = users.loads(payload)                                         # newest model (version 2)
```
"""

from __future__ import annotations

from ._codec import Codec, JsonCodec, Limits, ZlibCodec
from ._errors import (
    EncodeError,
    LossyWriteError,
    MalformedPayloadError,
    NestingTooDeepError,
    PayloadTooLargeError,
    SerdeError,
    UnsupportedVersionError,
)
from ._model import Converter
from ._serializer import Step, Version, VersionedSerializer

__all__ = [
    "Codec",
    "Converter",
    "EncodeError",
    "JsonCodec",
    "Limits",
    "LossyWriteError",
    "MalformedPayloadError",
    "NestingTooDeepError",
    "PayloadTooLargeError",
    "SerdeError",
    "Step",
    "UnsupportedVersionError",
    "Version",
    "VersionedSerializer",
    "ZlibCodec",
]
