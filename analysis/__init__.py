"""analysis: load run results, fit scaling laws with uncertainty, draw figures."""
