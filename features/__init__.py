"""Feature semantics: one declaration (a Feast repo), two computations (online, offline)."""
