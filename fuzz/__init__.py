"""Coverage-guided fuzzing of Parcours' parsers and transformers (atheris), and an end-to-end
fuzz of a running engine over real MLLP sockets.

The harness functions import nothing from atheris, so the test suite replays the regression
corpus (`fuzz/regressions/<harness>/`) through them without the fuzzer installed.
"""
