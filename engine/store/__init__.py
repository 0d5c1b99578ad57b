"""The store: schema, queries, migrations, retention."""
