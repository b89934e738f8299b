"""ftaas core: settings, SQL records and migrations, the job lifecycle, object store, queue and
datasets; shared by the API and the worker, importing neither."""
