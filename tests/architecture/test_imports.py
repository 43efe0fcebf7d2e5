"""The code's shape: no import circle between the project's modules, and no import hidden in a
function unless it has a reason written down here."""

from tests.architecture.imports import all_imports, cycles

# Imports that must stay inside a function, and why.
ALLOWED_IN_FUNCTION = {
    # Django's documented place to connect signal handlers: AppConfig.ready().
    ("keys.apps", "keys.signals"),
    # Only the standalone layout runs a worker inside the web process.
    ("nebula_site.asgi", "inference.jobs"),
    ("nebula_site.asgi", "inference.runner"),
    ("nebula_site.asgi", "inference.workers"),
}


def test_no_module_imports_itself_through_others():
    edges = [edge for edge in all_imports() if not edge.type_checking]
    assert cycles(edges) == []


def test_imports_inside_functions_are_the_allowed_ones():
    hidden = {
        (edge.source, edge.target)
        for edge in all_imports()
        if edge.in_function and not edge.type_checking
    }
    assert hidden <= ALLOWED_IN_FUNCTION, sorted(hidden - ALLOWED_IN_FUNCTION)


def test_the_checker_finds_a_circle():
    from tests.architecture.imports import Import

    edges = [Import("a", "b", 1, False, False), Import("b", "a", 1, True, False)]
    assert cycles(edges) == [["a", "b"]]


def test_only_the_worker_runs_the_embedding_model():
    # Its module loads torch and the weights: a web process must never reach it.
    importers = {
        edge.source for edge in all_imports() if edge.target == "inference.engine.embeddings"
    }
    assert importers == {"inference.runner"}
