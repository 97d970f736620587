"""batch-enricher: enrich spreadsheets with Juhe's 经济能力评级（社保）查询 API."""

__version__ = "0.1.0"
