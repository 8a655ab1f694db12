-- event_crypto 0.2.0 -> 0.3.0. Every object ends as a fresh 0.3.0 install makes it (tests/upgrade.sh compares them
-- for an upgrade from every release); every row of earlier releases stays and decrypts. Changes to SQL objects
-- after 0.2.0 go here, in the order they are made.
\echo Use "ALTER EXTENSION event_crypto UPDATE TO '0.3.0'" to load this file. \quit
