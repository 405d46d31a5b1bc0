"""People: faces over time become persons, person transitions become event payloads.

Owns the tracker and its vote (`track`: a face followed across frames, re-identified by
appearance, decided once its votes agree) and the event payloads with their schema
(`events`, `schema/event.schema.json`). Its settings are the `track` section (`config`).

May import: the base and `vision` (boxes, labels, the classifier head's name).
"""
