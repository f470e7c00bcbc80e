"""Accumulation programs: user code as data (``program``), DESIGN §3 as executable code (``model``), Hypothesis
strategies that generate valid programs (``strategies``) and standalone repro scripts (``repro``)."""
