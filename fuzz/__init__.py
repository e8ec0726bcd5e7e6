"""Fuzzing of chatmaild and the state tree's input parsers (hypothesis).

    python -m fuzz [--cases N] [target ...]      (./cmsalt fuzz ...)

Targets (:mod:`fuzz.targets`): ``filtermail_outgoing``, ``filtermail_incoming``
(generated MIME mixing real OpenPGP packet streams and armour with cleartext
anywhere; an accepted message must pass an independent oracle,
:mod:`fuzz.oracle`), ``fastpath`` (the byte-level fast path never accepts
what the full parser refuses), ``dictproxy`` (the dict protocol with
doveauth behind it: no crash, nothing written outside account directories),
``migrate`` (``_modules/chatmail_migrate.py`` inspect/import on generated
tar archives: only CommandExecutionError, nothing written outside the relay
tree) and ``pillar`` (``_modules/chatmail_config.py`` build: only
ChatmailConfigError).
"""
