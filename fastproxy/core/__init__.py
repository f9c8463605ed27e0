"""Neutral ground between the planes: the values they hand each other (records),
the interfaces they talk through (seams), one error hierarchy and one flow-control
class. Nothing here imports the data plane, the admin plane or a monitoring service."""
