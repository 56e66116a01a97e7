"""Small methods that tests build on: the three required hooks as stubs, and one that trains the norms."""

from zoo import Method, hookimpl


class Complete(Method):
    """The hooks every method must implement, as stubs, for tests about something else."""

    @hookimpl
    def ftzoo_select_parameters(self):
        return []

    @hookimpl
    def ftzoo_rewrite_model(self):
        pass

    @hookimpl
    def ftzoo_adapter_deltas(self):
        return {}


class Norms(Method):
    """A correct method: trains the norm weights."""

    name = "author-norms"

    @hookimpl
    def ftzoo_select_parameters(self, model):
        return [n for n, _ in model.named_parameters() if n.endswith("norm.weight")]

    @hookimpl
    def ftzoo_rewrite_model(self, model, selection):
        for name in selection:
            model.get_parameter(name).requires_grad_(True)

    @hookimpl
    def ftzoo_adapter_deltas(self, adapter, model):
        return {n: t.to(model.get_parameter(n)) - model.get_parameter(n) for n, t in adapter.tensors.items()}
