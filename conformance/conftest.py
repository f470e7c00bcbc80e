"""The conformance suite runs on the accumgate pytest plugin: scenarios are generated from the profile
(`--accumgate-profile`, default ci), the target is chosen by `--accumgate-target` (default reference), known
failures come from `--accumgate-xfails`. Each test module holds one property family of DESIGN §4."""
pytest_plugins = ["harness.pytest_plugin"]
