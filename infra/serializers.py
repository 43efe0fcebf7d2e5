"""A DRF serializer for request bodies that refuses fields it does not know.

DRF ignores unknown fields, so a typo (`rpm_limt`) or a setting this version does not have
would be accepted and silently dropped: the client believes it set something it did not.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request


class StrictSerializer(serializers.Serializer[Any]):
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {unknown[0]: [f"Unknown field. Known fields: {', '.join(self.fields)}."]}
                )
        return super().to_internal_value(data)


def validated_body(
    serializer_class: type[serializers.Serializer[Any]], request: Request
) -> dict[str, Any]:
    """The request body checked by `serializer_class` (or a 400 naming the field)."""
    body = serializer_class(data=request.data)
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)
