"""AMT, the Advanced Manipulation Transformer.

3D hand (21 joints, confidences, MANO shape), 6-DoF object poses and hand-object
contacts from one RGB image. Units: metres in data, millimetres in reported metrics.
"""

__version__ = "0.1.0"
