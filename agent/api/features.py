"""The feature tag a request is charged to (chargeback by feature): the ``X-AIFinOps-Feature``
header, else ``metadata.feature`` in the body."""

from __future__ import annotations

import re
from collections.abc import Mapping

from agent.api.schemas import FEATURE_PATTERN
from agent.errors import InvalidRequest

FEATURE_HEADER = "x-aifinops-feature"


def feature_tag(headers: Mapping[str, str], metadata: Mapping[str, str] | None) -> str:
    """The tag, or "" for none; InvalidRequest for one that is not 1-64 safe characters."""
    header = headers.get(FEATURE_HEADER)
    feature = header if header is not None else (metadata or {}).get("feature", "")
    if feature and not re.fullmatch(FEATURE_PATTERN, feature):
        raise InvalidRequest("feature tag: 1-64 letters, digits, '.', '_', ':', '/' or '-'")
    return feature
