"""The values of the enum-like settings, in a module that imports nothing.

``train.py`` defines its flags from these and ``keras_softkd.config`` checks them before
Keras and TensorFlow are imported, so that a mistyped flag is refused at once; the modules
that use them (``precision``, ``losses``) import them from here.

Example:
    >>> from keras_softkd import choices
    >>> choices.PRECISIONS
    ('float32', 'mixed_float16', 'mixed_bfloat16')
"""

#: ``--precision``: Keras dtype policies of the whole training run.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
#: ``--teacher_precision``: ``same`` (the student's), or ``bfloat16`` compute for the teachers.
TEACHER_PRECISIONS = ("same", "bfloat16")
#: The value of either flag that ``keras_softkd.precision.resolve`` turns into one of the above.
AUTO = "auto"
#: TF-reg's loss: the reference code's (``code``) or the paper's Eq. 9 (``paper``).
TF_REG_FORMS = ("code", "paper")
