"""maskwatch workstation side: train, evaluate and export the int8 mask classifier.

Uses TensorFlow/Keras; never imported by the device agent.
"""
