"""The Bitrix24 protocol as the app speaks it: frame handshake, OAuth server, REST, forms."""
