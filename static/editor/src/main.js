// The editor's entry point (bundled by static/editor/build.mjs).
import { start } from "./shell.js";

start();
