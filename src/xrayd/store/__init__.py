"""The offline trace store: an embedded SQLite database of segment documents, indexed for the
X-Ray API's queries."""
