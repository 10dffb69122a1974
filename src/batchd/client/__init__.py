"""The operator's side of the ``batchd`` command: talking to a server over HTTP.

``http`` is the client, ``inputs`` reads request files, ``submit`` splits them into
batches, ``progress`` waits with a live bar, ``results`` merges and filters results,
``views`` renders tables. None of it imports the server.
"""
