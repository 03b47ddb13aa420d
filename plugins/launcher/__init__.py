"""Built-in launchers: where a run's engines and trainer ranks execute (group ``launcher``)."""
