"""Bench: measurement commands that print numbers and write them to JSON.

Owns `mask-agent bench`, `bench-detect` and `bench-classify` (`measure`) and
`mask-agent bench-track` (`tracking`). Nothing asserts these numbers; the README's figures
come from them.

May import: everything. Never imported by the running agent: only `cli` loads it, inside
the bench commands.
"""
