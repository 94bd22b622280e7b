"""Parts of the run-detail page (graph, timeline, node table, trace, log, node panel),
each fed by the page's :class:`ui.run_model.RunModel`."""
