"""Request and response ("Public") schemas of the API; they define the OpenAPI document."""
