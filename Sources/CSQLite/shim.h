#include <sqlite3.h>

/* SQLITE_TRANSIENT is a cast of -1 to a function pointer, a macro Swift cannot
   import. Binding with it makes SQLite copy the text before the call returns,
   so a Swift string's temporary buffer may go away afterwards. */
static inline sqlite3_destructor_type csqlite_transient(void) {
    return SQLITE_TRANSIENT;
}
