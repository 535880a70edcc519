"""imsaka.aka"""
