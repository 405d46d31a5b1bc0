"""Site: learning this doorway.

Owns the sample store of collected face crops and their labels (`samples`), fitting and
accepting a site head on them (`adapt`), and the steps the CLI and the console share:
where the store and the head live, labelled folders turned into features, adapt, revert,
status (`doorway`). Its settings are the `adapt` section (`config`).

May import: the base, `vision` and `people`. Not `delivery` (its sibling), `web` or the top.
"""
