"""The model registry's REST API, by sub-domain: models, versions, resumable uploads."""
