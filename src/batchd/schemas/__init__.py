"""Wire shapes: what batchd receives and sends, one module per API noun, as msgspec types.

The OpenAPI document (``api/openapi.py``) is generated from these types; responses parse
with the SDK's own models. The scalar shapes the nouns share are here.
"""

from typing import Annotated

import msgspec

Count = Annotated[int, msgspec.Meta(ge=0)]
Time = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
