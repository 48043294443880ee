/** The platforms dorun's npm packages hold a binary for. */
export declare const PLATFORMS: readonly string[];

/** Thrown when no dorun binary can run here; the message says why and what to do. */
export declare class DorunBinaryError extends Error {}

/**
 * The path of the dorun binary for this machine: `$DORUN_BINARY` when set, else the one in
 * the installed `@dorun/<platform>` package. Throws a {@link DorunBinaryError}.
 */
export declare function binaryPath(): string;

/** A plain explanation of an error `child_process.spawn` gave for the binary. */
export declare function explainSpawnError(binary: string, error: Error & { code?: string }): string;

/** `${process.platform}-${process.arch}`. */
export declare function platformKey(): string;

/** The glibc version Node runs on ("2.36"), or null (musl, or not Linux). */
export declare function glibcVersion(): string | null;
