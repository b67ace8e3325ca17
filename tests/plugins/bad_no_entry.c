/* Test plugin: a shared object without the fusion_overlay_entry symbol
 * (everything hidden), refused as FH_LOAD_NO_ENTRY. */
int tp_not_an_overlay(void);
int tp_not_an_overlay(void)
{
    return 42;
}
