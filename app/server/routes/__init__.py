"""Thin HTTP and websocket handlers, one router per resource."""
