"""What every app uses and no app owns: errors for people, REST base classes, middleware,
formatting template filters, charts and Markdown. Imports no app of the portal."""
