"""Local training objectives, chosen by name (config ``objective = "<name>"``, parameters under
``[objective]`` or ``--set objective.<param>=<value>``).

How to add an objective
-----------------------
One module, one ``@register_objective("<name>")`` class, one import line here:

1. Write ``fedmm/objectives/<name>.py`` with a subclass of :class:`Objective` that sets
   ``needs_heads = True`` if it uses ``heads.<m>``, a
   nested ``@dataclass class Params(fedmm.params.Checked)`` whose fields all have
   defaults, each field's range or choices declared in its annotation
   (``alpha: Annotated[float, Interval(float, 0, None, closed="left")] = 1.0``,
   ``Options("mean", "concat")``) and its meaning in the numpy-style ``Parameters`` section of the
   docstring (``fedmm config`` shows it), ``validate(self)`` for rules between fields, a class
   attribute ``param_aliases = {"config-name": "field_name"}`` where a field's kebab-case config
   name cannot be its config name (``lambda``, a Python keyword), and the hooks it changes (see
   :mod:`fedmm.objectives.base`).
2. Decorate the class with ``@register_objective("<name>")`` (from :mod:`fedmm.objectives.registry`;
   it sets the class's ``name``).
3. Add the module to the import line below, so that ``import fedmm.objectives`` registers it.

:func:`build_objective` then builds it from a mapping of config values with the one parameter
validator, :mod:`fedmm.params` (strings from the command line converted, NaN and infinity refused,
every constraint checked, the nearest valid key named on a typo); ``fedmm config objective <name>``
and :func:`describe_objective` list its parameters with types, defaults and help.
docs/objectives.md says what each objective does.
"""

# One import per objective module; importing registers it ("ce" is the base class, registered by
# the registry itself).
from fedmm.objectives import arm, boost, cmsfed, fedcmi, mnl, ogm_ge, pmr, remix, uniform  # noqa: E402,F401,I001
from fedmm.objectives.base import Objective, RoundContext, Schedule
from fedmm.objectives.registry import (
    build_objective,
    describe_objective,
    objective_class,
    objective_names,
    register_objective,
)

__all__ = [
    "Objective",
    "RoundContext",
    "Schedule",
    "build_objective",
    "describe_objective",
    "objective_class",
    "objective_names",
    "register_objective",
]
