"""sangkien: a workflow engine for the campaign-to-recognition lifecycle of initiatives."""
