"""Dataset versions: manifests, schema and statistics, diff, checkout, PII scan and anonymisation."""

__all__: list[str] = []
