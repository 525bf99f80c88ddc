// schemas: written next
