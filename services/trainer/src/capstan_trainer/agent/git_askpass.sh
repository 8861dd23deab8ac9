#!/bin/sh
# GIT_ASKPASS for cloning a task's git storage: the answer comes from the environment the agent gave git
# (never an argv, a URL or a file), so the credential shows up in no process listing and no log.
case "$1" in
  Username*) printf '%s\n' "$CAPSTAN_GIT_USERNAME" ;;
  *) printf '%s\n' "$CAPSTAN_GIT_PASSWORD" ;;
esac
