"""The conformance suite runs on the accumgate pytest plugin: one test per property of DESIGN §4, parametrized by
every scenario of the profile it applies to (`--accumgate-profile`, default ci); the target is chosen by
`--accumgate-target` (default reference), known failures come from `--accumgate-xfails`. A test body only asks the
session's runner for its (scenario, property) verdict: no test runs a job itself."""
pytest_plugins = ["harness.pytest_plugin"]
