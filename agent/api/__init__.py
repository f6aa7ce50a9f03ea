"""HTTP only: the wire contract (schemas), routes, auth and the error -> status map."""
