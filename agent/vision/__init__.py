"""Vision: frames in, labelled faces out.

Owns the camera and video sources (`camera`), the motion gate (`motion`), the face
detectors (`detect`, with `models` for their files and the bundled YuNet in
`default_detector/`, and `contrast` for their view in hard light), the classifier's crop
(`preprocess`), the int8 classifier and its
last layer (`classify`, `head`, `tflite`, the bundle in `default_model/`), the label rule
(`decision`), single-image prediction (`predict`) and Pascal VOC reading (`voc`). Its
settings are the `source`, `detect` and `classify` sections (`config`).

May import: the base only (`errors`, `settings`). Nothing here knows about people,
brokers, the site or the web.
"""
