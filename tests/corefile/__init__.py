"""Tests of the nodecache.corefile package, mirroring its modules."""
